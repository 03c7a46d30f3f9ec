-- Join, renew, grow or shrink one node's share (see src/script.rs).
-- KEYS: nodes, meta. ARGV: node, epoch (0 = join), want, in_use, ttl_ms,
-- default budget. Returns {ok, epoch, share, budget, live, fair, hand_back, now_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local epoch = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local in_use = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local budget = tonumber(redis.call('HGET', KEYS[2], 'budget'))
if not budget then
  budget = tonumber(ARGV[6])
  redis.call('HSET', KEYS[2], 'budget', ARGV[6])
end
local function parse(v)
  local r = {}
  for x in string.gmatch(v, '%S+') do r[#r + 1] = tonumber(x) end
  return r
end
local all = redis.call('HGETALL', KEYS[1])
local others = {}
local others_sum = 0
local mine = nil
for i = 1, #all, 2 do
  local e = parse(all[i + 1])
  if e[3] <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] == node then
    mine = e
  else
    others[#others + 1] = e
    others_sum = others_sum + e[1]
  end
end
local live = #others + 1
local fair = math.floor(budget / live)
local function starving(e) return e[5] > e[1] and e[1] < fair end
local cur = 0
if epoch == 0 then
  -- A fresh counter starts from the server clock, so epochs keep rising
  -- even after Redis lost its data: a grant from before the loss can
  -- never be mistaken for a later one.
  if redis.call('HEXISTS', KEYS[2], 'epoch') == 0 then
    redis.call('HSET', KEYS[2], 'epoch', string.format('%d', now * 1000))
  end
  epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
elseif mine == nil or mine[2] ~= epoch then
  return {0, epoch, 0, budget, live, fair, 0, now}
else
  cur = mine[1]
end
local share = want
if want > cur then
  local room = budget - others_sum
  local any_starving = false
  for _, e in ipairs(others) do
    if starving(e) then any_starving = true end
  end
  -- While another node is starved below its fair share, nobody grows
  -- past fair: what is handed back goes to the starved first.
  if any_starving and room > fair then room = fair end
  if share > room then share = room end
  if share < cur then share = cur end
end
local hand_back = 0
if others_sum + share > budget then hand_back = 1 end
for _, e in ipairs(others) do
  if starving(e) then hand_back = 1 end
end
if want > share and share < fair then hand_back = 1 end
redis.call('HSET', KEYS[1], node, string.format('%d %d %d %d %d %d',
  share, epoch, now + ttl, in_use, want, now))
return {1, epoch, share, budget, live, fair, hand_back, now}
