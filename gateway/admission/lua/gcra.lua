-- GCRA over several limits, and budget reservations, at once, all or nothing: a request is
-- admitted only if every limit admits it and every budget has room, and then every limit
-- is charged and every budget reserved.
-- ARGV[1]: G, the number of rate limits; KEYS[1..G] are theirs, KEYS[G+1..] the budgets'.
-- Rate limit i (its key's value is the theoretical arrival time, ms):
--   ARGV[3i-1]: emission interval (ms per unit)
--   ARGV[3i]:   burst tolerance (ms; interval * limit)
--   ARGV[3i+1]: cost of this request (units: 1 request, or n images)
-- Budget j (its key's value is what the period has spent and reserved, in micros), from b = 3G+1+4(j-1):
--   ARGV[b+1]: the budget (micros)   ARGV[b+2]: this request's reservation (micros)
--   ARGV[b+3]: the period's end (epoch ms)   ARGV[b+4]: when the counter expires (epoch ms)
-- Returns {admitted (1|0), index of the deciding check (1-based, budgets after the limits),
--          remaining units, retry after (ms, 0 when admitted), reset (ms until the deciding
--          limit is full again), then per rate limit: remaining, reset (ms) (after this request
--          when admitted, as they were when refused), then per budget:
--          spent and reserved in this period (micros, after this request when admitted)}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local g = tonumber(ARGV[1])
local new_tats, states, unchanged = {}, {}, {}
local refused = nil
local decide, least, reset = 1, nil, 0
for i = 1, g do
  local interval = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  -- Times relative to now, so that a full bucket compares exactly (no rounding of large clocks).
  local ahead = (tonumber(redis.call('GET', KEYS[i])) or now) - now
  if ahead < 0 then ahead = 0 end
  local new_ahead = ahead + interval * cost
  if new_ahead > burst + 0.001 then  -- 1 µs of slack for the clock stored with 3 decimals
    if refused == nil then
      refused = {0, i, math.floor((burst - ahead) / interval), math.ceil(new_ahead - burst), math.ceil(ahead)}
    end
    new_ahead = ahead  -- not charged: its state is what it was
  end
  new_tats[i] = now + new_ahead
  local remaining = math.floor((burst - new_ahead) / interval)
  states[#states + 1] = remaining
  states[#states + 1] = math.ceil(new_ahead)
  unchanged[#unchanged + 1] = math.floor((burst - ahead) / interval)  -- the state if nothing is charged
  unchanged[#unchanged + 1] = math.ceil(ahead)
  if least == nil or remaining < least then decide, least, reset = i, remaining, new_ahead end
end
local spent = {}
for j = 1, #KEYS - g do
  local b = 3 * g + 1 + 4 * (j - 1)
  local limit, cost, period_end = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  spent[j] = tonumber(redis.call('GET', KEYS[g + j])) or 0
  if refused == nil and spent[j] + cost > limit then
    local renew = math.ceil(period_end - now)
    refused = {0, g + j, limit - spent[j], renew, renew}
  end
end
if refused ~= nil then
  for _, value in ipairs(unchanged) do refused[#refused + 1] = value end
  for j = 1, #spent do refused[#refused + 1] = spent[j] end
  return refused
end
for i = 1, g do
  redis.call('SET', KEYS[i], string.format('%.3f', new_tats[i]), 'PX', math.ceil(new_tats[i] - now) + 1)
end
local reply = {1, decide, least or 0, 0, math.ceil(reset)}
for _, value in ipairs(states) do reply[#reply + 1] = value end
for j = 1, #spent do
  local b = 3 * g + 1 + 4 * (j - 1)
  reply[#reply + 1] = redis.call('INCRBY', KEYS[g + j], ARGV[b + 2])
  redis.call('PEXPIREAT', KEYS[g + j], ARGV[b + 4])
end
return reply
