-- Give a node's share back if its epoch still matches (see src/script.rs).
-- KEYS: nodes. ARGV: node, epoch. Returns 1 if removed, 0 otherwise.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local e = {}
for x in string.gmatch(v, '%S+') do e[#e + 1] = tonumber(x) end
if e[2] ~= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
