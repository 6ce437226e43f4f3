"""The F1 vocabulary producers and consumers share, owned by neither side.

Live timing's state merge (`state`) and its time formats (`timing`); the F1
games' UDP formats as EA publishes them, their compiler and readable names
(`game`). Producers decode sources with these; consumers interpret messages
with them; neither imports the other. (Not `f1`: the f1-packets package
installs a module of that name.)
"""
