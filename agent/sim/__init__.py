"""Simulation: virtual watches (one firmware model per protocol), a virtual BlueZ on a private dbus-daemon, and a
delaying TCP link. Never imported by the runtime; the load bench, the soaks, the tests and `virtual-watch` use it."""
