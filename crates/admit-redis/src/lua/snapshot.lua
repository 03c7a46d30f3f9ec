-- Every unexpired entry and the budget at one moment, no writes.
-- KEYS: nodes, meta. Returns {now_ms, budget or -1, node1, value1, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(redis.call('HGET', KEYS[2], 'budget')) or -1
local out = {now, budget}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '^%S+ %S+ (%S+)'))
  if exp > now then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
