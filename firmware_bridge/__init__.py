"""Everything that knows a watch's BLE protocol: decoders from notification bytes to SI samples."""
