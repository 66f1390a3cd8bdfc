"""What happened after sending: SES events drained from SQS or posted by SNS, normalized and applied once; group analytics; outbound status webhooks."""
