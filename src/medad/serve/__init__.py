"""``medad serve``: a local web app that scores query images against K normal references (:mod:`.app`)."""
