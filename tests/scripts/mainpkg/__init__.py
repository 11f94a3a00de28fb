"""A package for ``python -m mainpkg.prog`` (test_main_script.py)."""
