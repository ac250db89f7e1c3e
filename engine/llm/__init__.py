"""Model backends behind one protocol: ollama, embedded (llama.cpp), scripted."""
