"""Directions that leave the atlas: selection, llama.cpp and safetensors export, steering and abliteration."""
