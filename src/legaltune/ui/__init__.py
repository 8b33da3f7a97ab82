"""`legaltune ui`: web pages served by the same FastAPI app as the API (runs, side-by-side chat, plan).

Plain server-rendered HTML and one small script, no front-end framework: it installs nothing beyond
the server's own dependencies, a page is ready in milliseconds, and a browser test drives ordinary
elements with stable ids. ``runs`` lists run directories, ``pages`` the routes.
"""
