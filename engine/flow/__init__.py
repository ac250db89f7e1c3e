"""The flow language: loading, checking and compiling flow files and tool manifests."""
