"""The embedded demo: its data (``data``), its run (``run``: ``otplug train --demo``) and its report (``report``)."""
