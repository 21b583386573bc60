"""Model families, the zoo of embedded models, and loading of local weights."""
