"""A self-contained interactive UMAP page: canvas, plain JavaScript, inline data.

Nothing is fetched from anywhere (museum machines are often air-gapped): points,
labels and a random subsample of thumbnails (base64 JPEG data URIs) are embedded
in the page. Hovering shows the nearest image (its thumbnail when it has one),
checkboxes filter classes, a menu switches task, the wheel zooms and dragging pans.
Every point is drawn however many there are; only the thumbnails are subsampled.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from featkit.explore.plots import UNKNOWN_COLOUR, data_uri, palette, thumbnail
from featkit.paths import EXPLORE_ELSEWHERE, new_file

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{margin:0;font:13px system-ui,sans-serif;display:flex;height:100vh;overflow:hidden;color:#222}
#side{width:250px;padding:10px;overflow:auto;border-right:1px solid #ddd;background:#fafafa;flex:none}
#side h1{font-size:14px;margin:0 0 8px} #side label{display:block;white-space:nowrap;cursor:pointer}
.sw{display:inline-block;width:10px;height:10px;border-radius:5px;margin:0 5px 0 2px;vertical-align:middle}
#main{flex:1;position:relative} canvas{position:absolute;top:0;left:0}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #999;padding:4px;display:none;
 max-width:260px;box-shadow:0 2px 6px rgba(0,0,0,.2);font-size:12px}
#tip img{display:block;max-width:160px;max-height:160px;margin-bottom:3px} .muted{color:#777}
button{font-size:12px;margin:4px 4px 4px 0}
</style></head>
<body><div id="side"><h1>__TITLE__</h1>
<div>task <select id="task"></select></div>
<div><button id="all">all</button><button id="none">none</button><button id="reset">reset view</button></div>
<div id="classes"></div>
<p class="muted" id="stats"></p>
<p class="muted">Hover a point to see the image; wheel to zoom, drag to pan.</p></div>
<div id="main"><canvas id="plot"></canvas><div id="tip"></div></div>
<script id="featkit-data" type="application/json">__DATA__</script>
<script>
(function(){
"use strict";
var D=JSON.parse(document.getElementById("featkit-data").textContent);
var n=D.x.length, main=document.getElementById("main"), cv=document.getElementById("plot"), ctx=cv.getContext("2d");
var tip=document.getElementById("tip"), sel=document.getElementById("task"), box=document.getElementById("classes");
var task=D.order[0], on={}, view={s:1,tx:0,ty:0}, W=0, H=0, PAD=20, dpr=window.devicePixelRatio||1;
var G=128, grid=new Array(G*G);
for(var c=0;c<G*G;c++) grid[c]=[];
for(var i=0;i<n;i++){grid[Math.min(G-1,Math.floor(D.x[i]*G))*G+Math.min(G-1,Math.floor(D.y[i]*G))].push(i);}
function esc(s){return String(s).replace(/[&<>"]/g,function(c){return {"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c];});}
function T(){return D.tasks[task];}
function sx(x){return (PAD+x*(W-2*PAD))*view.s+view.tx;}
function sy(y){return (PAD+(1-y)*(H-2*PAD))*view.s+view.ty;}
function visible(i){var k=T().codes[i]; return k<0 ? on[-1] : on[k];}
function resize(){W=main.clientWidth;H=main.clientHeight;cv.width=W*dpr;cv.height=H*dpr;
 cv.style.width=W+"px";cv.style.height=H+"px";ctx.setTransform(dpr,0,0,dpr,0,0);draw();}
function draw(){
 ctx.clearRect(0,0,W,H); var t=T(), r=Math.max(1,Math.min(4,2.5*Math.sqrt(view.s)*Math.sqrt(4000/Math.max(n,1))));
 var passes=[-1].concat(t.classes.map(function(_,k){return k;})), shown=0;
 for(var p=0;p<passes.length;p++){var k=passes[p]; if(!(k<0?on[-1]:on[k])) continue;
  ctx.fillStyle=k<0?D.unknown:t.colours[k]; ctx.globalAlpha=k<0?0.6:0.85;
  for(var i=0;i<n;i++){ if(t.codes[i]!==k) continue; var X=sx(D.x[i]),Y=sy(D.y[i]);
   if(X<-r||Y<-r||X>W+r||Y>H+r) continue; ctx.fillRect(X-r/2,Y-r/2,r,r); shown++; }}
 ctx.globalAlpha=1;
 document.getElementById("stats").textContent=shown+" of "+n+" points shown; "+D.nthumbs+" have a hover thumbnail";
}
function buildClasses(){
 var t=T(); on={}; var html="";
 var counts=new Array(t.classes.length).fill(0), unk=0;
 for(var i=0;i<n;i++){ if(t.codes[i]<0) unk++; else counts[t.codes[i]]++; }
 t.classes.forEach(function(c,k){on[k]=true; html+='<label><input type="checkbox" data-k="'+k+'" checked>'+
  '<span class="sw" style="background:'+t.colours[k]+'"></span>'+esc(c)+' <span class="muted">('+counts[k]+')</span></label>';});
 on[-1]=true; if(unk) html+='<label><input type="checkbox" data-k="-1" checked><span class="sw" style="background:'+
  D.unknown+'"></span><i>unlabelled</i> <span class="muted">('+unk+')</span></label>';
 box.innerHTML=html;
 box.querySelectorAll("input").forEach(function(el){el.onchange=function(){on[+el.dataset.k]=el.checked;draw();};});
}
function setAll(v){box.querySelectorAll("input").forEach(function(el){el.checked=v;on[+el.dataset.k]=v;});draw();}
function nearest(mx,my){
 var best=-1,bd=100, ux=((mx-view.tx)/view.s-PAD)/(W-2*PAD), uy=1-((my-view.ty)/view.s-PAD)/(H-2*PAD);
 var rad=Math.ceil(10/(view.s*(Math.min(W,H)-2*PAD))*G)+1, gx=Math.floor(ux*G), gy=Math.floor(uy*G);
 for(var a=gx-rad;a<=gx+rad;a++){ if(a<0||a>=G) continue; for(var b=gy-rad;b<=gy+rad;b++){ if(b<0||b>=G) continue;
  var cell=grid[a*G+b]; for(var q=0;q<cell.length;q++){var i=cell[q]; if(!visible(i)) continue;
   var dx=sx(D.x[i])-mx, dy=sy(D.y[i])-my, d=dx*dx+dy*dy; if(d<bd){bd=d;best=i;}}}}
 return best;
}
var drag=null;
cv.onmousedown=function(e){drag={x:e.offsetX,y:e.offsetY,tx:view.tx,ty:view.ty};};
window.onmouseup=function(){drag=null;};
cv.onmousemove=function(e){
 if(drag){view.tx=drag.tx+e.offsetX-drag.x;view.ty=drag.ty+e.offsetY-drag.y;tip.style.display="none";draw();return;}
 var i=nearest(e.offsetX,e.offsetY); if(i<0){tip.style.display="none";return;}
 var t=T(), k=t.codes[i], lab=k<0?"<i>unlabelled</i>":esc(t.classes[k]), th=D.thumbs[i];
 tip.innerHTML=(th?'<img src="'+th+'">':'<div class="muted">(no thumbnail: '+D.nthumbs+' of '+n+' sampled)</div>')+
  '<b>'+lab+'</b><br>'+esc(D.ids[i]);
 tip.style.display="block"; tip.style.left=Math.min(e.offsetX+14,W-270)+"px"; tip.style.top=Math.min(e.offsetY+14,H-210)+"px";
};
cv.onmouseleave=function(){tip.style.display="none";};
cv.onwheel=function(e){e.preventDefault(); var f=e.deltaY<0?1.25:0.8, s=Math.max(0.5,Math.min(200,view.s*f));
 f=s/view.s; view.tx=e.offsetX-(e.offsetX-view.tx)*f; view.ty=e.offsetY-(e.offsetY-view.ty)*f; view.s=s; draw();};
document.getElementById("reset").onclick=function(){view={s:1,tx:0,ty:0};draw();};
document.getElementById("all").onclick=function(){setAll(true);};
document.getElementById("none").onclick=function(){setAll(false);};
D.order.forEach(function(t){var o=document.createElement("option");o.value=t;o.textContent=t;sel.appendChild(o);});
sel.onchange=function(){task=sel.value;buildClasses();draw();};
window.onresize=resize; buildClasses(); resize();
})();
</script></body></html>
"""


def _normalise(coords: np.ndarray) -> tuple[list[float], list[float]]:
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    unit = (coords - lo) / span
    return np.round(unit[:, 0], 4).tolist(), np.round(unit[:, 1], 4).tolist()


def task_codes(labels: np.ndarray) -> tuple[list[str], list[int]]:
    """Sorted class names and each point's class index (-1: unlabelled)."""
    known = [str(v) for v in labels if v is not None]
    classes = sorted(set(known))
    where = {c: k for k, c in enumerate(classes)}
    return classes, [where[str(v)] if v is not None else -1 for v in labels]


def page_data(*, coords: np.ndarray, ids: Sequence[str], labels: dict[str, np.ndarray],
              thumbs: dict[int, str], title: str) -> dict:
    x, y = _normalise(np.asarray(coords, dtype=np.float64))
    tasks = {}
    for task, values in labels.items():
        classes, codes = task_codes(values)
        tasks[task] = {"classes": classes, "codes": codes, "colours": palette(len(classes))}
    return {"title": title, "x": x, "y": y, "ids": [str(i) for i in ids], "order": list(labels), "tasks": tasks,
            "unknown": UNKNOWN_COLOUR, "thumbs": {str(i): uri for i, uri in thumbs.items()},
            "nthumbs": len(thumbs)}


def render_page(data: dict) -> str:
    # "<", ">" and "&" only occur inside JSON strings: as \u escapes they can never end or nest the script tag
    payload = (json.dumps(data, separators=(",", ":"))
               .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return _PAGE.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", payload)


def sample_thumbnails(paths: Sequence[Path], *, max_thumbnails: int, size: int, seed: int = 0) -> dict[int, str]:
    """Data URIs for a random subsample of at most ``max_thumbnails`` images (unreadable ones skipped)."""
    n = len(paths)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(n, max_thumbnails), replace=False)) if max_thumbnails else []
    out = {}
    for i in chosen:
        img = thumbnail(Path(paths[i]), size)
        if img is not None:
            out[int(i)] = data_uri(img)
    return out


def umap_html(path: Path, *, coords: np.ndarray, ids: Sequence[str], labels: dict[str, np.ndarray],
              paths: Sequence[Path], title: str, max_thumbnails: int = 1000, thumb_size: int = 96,
              seed: int = 0) -> tuple[Path, int]:
    """Write the page; returns its path and how many thumbnails it embeds."""
    thumbs = sample_thumbnails(paths, max_thumbnails=max_thumbnails, size=thumb_size, seed=seed)
    page = render_page(page_data(coords=coords, ids=ids, labels=labels, thumbs=thumbs, title=title))
    path = Path(path)
    with new_file(path, fix=EXPLORE_ELSEWHERE) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path, len(thumbs)
