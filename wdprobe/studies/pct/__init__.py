"""The PCT study: closed and open answers, stances, compass positions, probes, tropes, its report."""
