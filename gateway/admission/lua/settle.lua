-- Settles a budget reservation: adds ARGV[1] micros (negative: gives back) to the budget's
-- counter KEYS[1] and answers what the period has spent; a counter already dropped (its
-- period long over) is left alone and the answer is -1.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
