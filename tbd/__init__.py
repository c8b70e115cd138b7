"""Think-Before-Draw command-line front end (`tbd`)."""
