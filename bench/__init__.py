"""Process-creation benchmark (``make bench``).

A package so that ``bench._children`` imports by the same name in the bench parent, in anyfork
children (which get the parent's ``sys.path``) and in multiprocessing's spawn/forkserver children.
"""
