"""What an audit can report, readable by the stages and the report alike: every metric family's facts and the
attacks' facts by name (:mod:`~auditor.catalogue.attacks`)."""
