"""``make bench``: the recipes measured against the wire limit, side by side, on the embedded broker."""
