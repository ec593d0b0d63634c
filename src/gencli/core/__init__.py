"""The shared vocabulary: requests, events, errors and the small pure pieces every layer uses."""
