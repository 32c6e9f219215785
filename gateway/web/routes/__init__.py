"""The web register's pages, one module per group; each has routes()."""
