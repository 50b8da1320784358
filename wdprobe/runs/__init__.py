"""Run directories: the manifest, atomic parts, locks and safe paths (``rundir``), shards (``shards``),
and the stage protocol every stage follows (``stage``)."""
