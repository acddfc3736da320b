"""Model versions on Kafka: a trainer publishes its weights, predictors load the newest.

trainer -> election (one leads, fenced) -> publisher -> models topic -> feed -> predictor
"""
