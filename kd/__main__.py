"""`python -m kd ...`: what torchrun launches (`-m kd stage distill`) and the same CLI as `kd`."""

from kd.cli import app

app(prog_name="kd")
