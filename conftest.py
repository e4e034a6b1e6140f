# Kept free of torch: every pytest process (and every xdist worker) would pay ~3 s to import it.
pytest_plugins = ("pytester",)
