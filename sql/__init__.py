"""The SQL views, installed as the package `wpipe.sql` (see setup.py) so that wheels, sdists and
editable installs all find them through package resources. Only the .sql files matter."""
