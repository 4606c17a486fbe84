-- GCRA over several limits at once, all or nothing: a request is admitted only if every
-- limit admits it, and then every limit is charged.
-- KEYS[i]: the i-th limit's key (its value is the theoretical arrival time, ms)
-- ARGV[3i-2]: emission interval of limit i (ms per unit)
-- ARGV[3i-1]: burst tolerance of limit i (ms; interval * limit)
-- ARGV[3i]:   cost of this request for limit i (units: 1 request, or n images)
-- Returns {admitted (1|0), index of the deciding limit (1-based), remaining units,
--          retry after (ms, 0 when admitted), reset (ms until the deciding limit is full again)}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local new_tats = {}
local decide, least, reset = 1, nil, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  -- Times relative to now, so that a full bucket compares exactly (no rounding of large clocks).
  local ahead = (tonumber(redis.call('GET', KEYS[i])) or now) - now
  if ahead < 0 then ahead = 0 end
  local new_ahead = ahead + interval * cost
  if new_ahead > burst + 0.001 then  -- 1 µs of slack for the clock stored with 3 decimals
    return {0, i, math.floor((burst - ahead) / interval), math.ceil(new_ahead - burst), math.ceil(ahead)}
  end
  new_tats[i] = now + new_ahead
  local remaining = math.floor((burst - new_ahead) / interval)
  if least == nil or remaining < least then decide, least, reset = i, remaining, new_ahead end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.3f', new_tats[i]), 'PX', math.ceil(new_tats[i] - now) + 1)
end
return {1, decide, least or 0, 0, math.ceil(reset)}
