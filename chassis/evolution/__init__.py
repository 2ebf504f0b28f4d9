"""Evolution: promoting a candidate release only after its gates pass (``chassis evolution``)."""
