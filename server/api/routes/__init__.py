"""The routes: each parses, calls one service function, returns."""
