"""featkit's command line: a thin Typer skin over the library (installed as ``featkit_cli``)."""
