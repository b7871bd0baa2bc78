"""The engine service: starts, stops, supervises and routes to self-hosted
llama.cpp and vLLM servers on one node."""
