"""Why the model answered as it did: Grad-CAM figures and the HTML report of predict."""
