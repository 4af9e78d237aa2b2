"""The web console, as the relay serves it: only its built assets (``dist/``, made from
``src/`` by ``npm run build``, which scripts/setup runs) are installed with this package,
so that an installed relay finds them with :mod:`importlib.resources` wherever it is
installed (:mod:`backline.relay.console_assets`)."""
