"""Admin date formats: times to the second with their zone, unambiguous
(FORMAT_MODULE_PATH; Django's English formats show minutes and "p.m.")."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
