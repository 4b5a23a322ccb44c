"""l2mu-agent: spiking L2MU activity recognition from smartwatch IMU streams."""
