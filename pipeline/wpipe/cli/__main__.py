"""python -m wpipe.cli"""

from wpipe.cli import app

app()
