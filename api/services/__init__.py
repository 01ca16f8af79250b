"""What the routes ask for, apart from HTTP: plain functions of the app state, the caller
and plain values (the routes parse requests and shape responses around them)."""
