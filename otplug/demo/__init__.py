"""The embedded demo (``otplug train --demo``): its data (``data``), its run (``run``) and its report (``report``).

It builds on training (:mod:`otplug.lerobot`) and nothing under :mod:`otplug.lerobot` imports it.
"""
