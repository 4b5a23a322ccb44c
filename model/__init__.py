"""The L2MU network, WISDM-2019 data, training and evaluation."""
