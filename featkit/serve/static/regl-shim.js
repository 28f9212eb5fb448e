// regl ships as a UMD script (loaded first by index.html, it defines createREGL);
// regl-scatterplot's ES module imports it by name through the page's import map.
export default globalThis.createREGL;
