"""`flowrun watch`: one process that renders a workflow again on every save, keeping its models loaded
(session: what re-runs; loop: the file events; serve: the page that shows the grid as it renders)."""
