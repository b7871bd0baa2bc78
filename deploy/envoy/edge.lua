-- The edge's glue between OpenAI's HTTP conventions and Switchboard's gRPC API.

-- OpenAI serves unary and streaming answers on one path and switches on the
-- body's "stream" field; the transcoder maps one path to one RPC. Streaming
-- bodies go to the ":stream" route, whose RPC returns exact SSE bytes.
local STREAMING = {
  ["/v1/chat/completions"] = true, ["/v1/completions"] = true,
  -- The seed APIs that switch on "stream" the same way (001 and 003).
  ["/api/llm/chat"] = true, ["/api/v1/chat/completions"] = true,
  -- The agent APIs: Anthropic's Messages and OpenAI's Responses.
  ["/v1/messages"] = true, ["/v1/responses"] = true,
  -- Bisheng's OpenAI-compatible assistant endpoint.
  ["/api/v2/assistant/chat/completions"] = true,
}

-- The seed APIs (the systems Switchboard replaces) answer errors in their own
-- shapes; the first matching prefix names the shape. Services render their
-- errors themselves (switchboard_router/surfaces); these are for the edge's
-- own refusals and Envoy's local replies. GET /api/llm/models is claimed by
-- both 001 and 002: its errors carry both shapes.
local SURFACES = {
  -- Anthropic's Messages API ({"type": "error", "error": {...}}).
  {"/v1/messages", "anthropic_messages"},
  {"/api/llm/models", "llm_models"},
  {"/api/v1/llm/models", "llm_models"},
  {"/api/llm/chat", "qwen_chat"},
  {"/api/llm/", "multi_llm"},
  -- The Bisheng LLM API's paths under 002's /api/v1/llm/ come first, then its own.
  {"/api/v1/llm/info", "bisheng"},
  {"/api/v1/llm/online", "bisheng"},
  {"/api/v1/llm/knowledge", "bisheng"},
  {"/api/v1/llm/assistant", "bisheng"},
  {"/api/v1/llm/evaluation", "bisheng"},
  {"/api/v1/llm/workflow", "bisheng"},
  {"/api/v1/llm/workbench", "bisheng"},
  {"/api/v1/llm/", "multi_llm"},
  {"/api/v1/llm", "bisheng"},
  {"/api/v2/assistant/", "bisheng"},
  -- The edge's own health check (OpenAI's shape), not Bisheng's /health.
  {"/healthz", false},
  {"/health", "bisheng"},
  -- Seed 004 (the inference manager): its paths under /api/v1 first, then /api.
  {"/api/v1/models/", "inference_manager"},
  {"/api/v1/system/", "inference_manager"},
  {"/api/v1/monitoring/", "inference_manager"},
  {"/api/v1/config", "inference_manager"},
  {"/api/v1/auth/", "inference_manager"},
  {"/api/v1/", "vision_chat"},
  {"/api/", "inference_manager"},
}

local function surface_of(path)
  for _, entry in ipairs(SURFACES) do
    if path:sub(1, #entry[1]) == entry[1] then
      return entry[2] or nil
    end
  end
  return nil
end

-- Seed 001's messages per code (its document's wording).
local QWEN_MESSAGES = {
  [400] = "参数错误", [401] = "未授权:API Key缺失或无效", [404] = "资源不存在",
  [413] = "参数错误:请求体过大", [429] = "请求频率超限", [500] = "服务器错误",
  [502] = "上游错误", [504] = "请求超时",
}

-- Anthropic's error types per HTTP status.
local ANTHROPIC_TYPES = {
  [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [413] = "request_too_large", [429] = "rate_limit_error",
  [504] = "timeout_error", [529] = "overloaded_error",
}

-- Seed 002's error codes per HTTP status.
local MULTI_LLM_CODES = {
  [400] = "INVALID_REQUEST", [401] = "UNAUTHORIZED", [403] = "UNAUTHORIZED",
  [404] = "MODEL_NOT_FOUND", [413] = "INVALID_REQUEST", [429] = "RATE_LIMIT_EXCEEDED",
  [503] = "MODEL_UNAVAILABLE",
}

-- Hostile input stops here, answered in OpenAI's error shape, before any
-- service sees it (so nothing is routed, and nothing is counted).

-- Keys that would let a client choose where, or with what credentials, an
-- upstream call goes (the LiteLLM CVE-2024-6587 class), as two words: matched
-- in any letter case, joined by "_", "-" or nothing (base_url, baseUrl, BASE-URL).
-- The transcoder would drop them at the top level, but not inside the fields
-- that carry free-form JSON (content parts, tool schemas, response_format);
-- refusing says so. Only a JSON object key can match: inside a string value
-- every quote is escaped.
local FORBIDDEN = {
  {"base", "url"}, {"api", "base"}, {"api", "key"},
  {"extra", "headers"}, {"extra", "query"}, {"extra", "body"},
}

-- Deepest JSON nesting accepted. The services' protobuf decoder (upb) stops at
-- 100 message levels and a JSON object inside a google.protobuf.Struct costs 3,
-- so a body nested past about 33 levels would otherwise fail inside the gRPC
-- server as an opaque 500. OpenAI bodies need fewer than 10, deep JSON schemas
-- in tools a few more.
local MAX_DEPTH = 32

-- gRPC metadata budget. The edge forwards every request header as gRPC
-- metadata, and gRPC servers refuse metadata past 8 KiB at random (and always
-- past 16 KiB) with RESOURCE_EXHAUSTED, which would read as a 429. gRPC counts
-- each header as name + value + 32 bytes; the edge adds a few of its own
-- (the gRPC path, te, content-type, x-request-id, x-forwarded-proto), hence
-- the margin below 8 KiB.
local MAX_HEADER_BYTES = 7 * 1024

-- API keys are printable ASCII, at most 512 characters: a longer credentials
-- header ("Bearer " and the key) is refused here, as switchboard_common/credentials.py
-- would ignore it.
local MAX_CREDENTIAL_BYTES = 512 + 16
local CREDENTIAL_HEADERS = {"authorization", "x-api-key"}

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

local function error_body(message, type_, code, param)
  return '{"error":{"message":' .. json_string(message) .. ',"type":"' .. type_
    .. '","code":' .. (code and json_string(code) or "null")
    .. ',"param":' .. (param and json_string(param) or "null") .. '}}'
end

-- Seed 004's error codes per HTTP status.
local INFERENCE_MANAGER_CODES = {
  [400] = "INVALID_REQUEST", [401] = "AUTHENTICATION_FAILED", [403] = "AUTHORIZATION_FAILED",
  [404] = "NOT_FOUND", [409] = "CONFLICT", [413] = "INVALID_REQUEST", [422] = "INVALID_REQUEST",
  [429] = "RATE_LIMIT_EXCEEDED", [503] = "SERVICE_UNAVAILABLE", [504] = "OPERATION_TIMEOUT",
}

-- An error in a seed API's shape. message is already a JSON string literal.
local function surface_body(surface, status, message, request_id, path)
  local code = tonumber(status) or 500
  if surface == "vision_chat" then
    return '{"detail":' .. message .. '}'
  end
  if surface == "bisheng" then
    return '{"status_code":' .. code .. ',"status_message":' .. message .. ',"data":null}'
  end
  if surface == "anthropic_messages" then
    return '{"type":"error","error":{"type":"' .. (ANTHROPIC_TYPES[code] or "api_error")
      .. '","message":' .. message .. '}}'
  end
  if surface == "inference_manager" then
    return '{"error":{"code":"' .. (INFERENCE_MANAGER_CODES[code] or "INTERNAL_ERROR")
      .. '","message":' .. message .. ',"details":{}},"timestamp":"'
      .. os.date("!%Y-%m-%dT%H:%M:%SZ") .. '","path":' .. json_string(path or "") .. '}'
  end
  local qwen = '"code":' .. code .. ',"message":'
    .. json_string(QWEN_MESSAGES[code] or "服务器错误") .. ',"data":null'
  if code == 400 then
    -- The edge refuses only malformed bodies: say what was wrong.
    qwen = '"code":400,"message":' .. (message:gsub('^"', '"参数错误:', 1)) .. ',"data":null'
  end
  local multi = '"error":{"code":"' .. (MULTI_LLM_CODES[code] or "INTERNAL_ERROR")
    .. '","message":' .. message .. ',"details":{},"request_id":'
    .. json_string(request_id or "") .. '}'
  if surface == "qwen_chat" then
    return "{" .. qwen .. "}"
  elseif surface == "multi_llm" then
    return "{" .. multi .. "}"
  end
  return "{" .. qwen .. "," .. multi .. "}"
end

-- The message of an OpenAI-shaped error body (Envoy's local replies), as the
-- JSON string literal it is, escapes and all.
local function message_literal(body)
  local _, stop = string.find(body, '"message"%s*:%s*"')
  if stop == nil then
    return '"Request refused."'
  end
  local i = stop + 1
  while true do
    local pos = string.find(body, '["\\]', i)
    if pos == nil then
      return '"Request refused."'
    end
    if string.byte(body, pos) == 92 then -- backslash: skip the escaped byte
      i = pos + 2
    else
      return string.sub(body, stop, pos)
    end
  end
end

-- A case-insensitive Lua pattern for one forbidden key, e.g. "base" "url" ->
-- '"[bB][aA][sS][eE][_%-]?[uU][rR][lL]"%s*:'.
local function any_case(word)
  return (word:gsub("%a", function(c) return "[" .. c:lower() .. c:upper() .. "]" end))
end

local FORBIDDEN_PATTERNS = {}
for i, words in ipairs(FORBIDDEN) do
  FORBIDDEN_PATTERNS[i] = {
    name = words[1] .. "_" .. words[2],
    pattern = '"' .. any_case(words[1]) .. "[_%-]?" .. any_case(words[2]) .. '"%s*:',
  }
end

-- "base\u005furl" is the key base_url to every JSON parser: spell out escaped
-- letters, digits, "_" and "-" before matching. (Other escapes stay, so an
-- escaped quote cannot turn a string value into something that looks like a key.)
local function unescape_name_chars(body)
  if not string.find(body, "\\u", 1, true) then
    return body
  end
  return (body:gsub("\\u(%x%x%x%x)", function(hex)
    local code = tonumber(hex, 16)
    if code < 128 then
      local c = string.char(code)
      if c:match("[%w_%-]") then return c end
    end
    return nil
  end))
end

local function forbidden_key(body)
  body = unescape_name_chars(body)
  for _, entry in ipairs(FORBIDDEN_PATTERNS) do
    if string.find(body, entry.pattern) then
      return entry.name
    end
  end
  return nil
end

-- Whether the JSON text nests arrays and objects deeper than MAX_DEPTH,
-- skipping string contents. Not a validator: malformed JSON is the
-- transcoder's to refuse.
local function too_deep(body)
  local depth, i, in_string = 0, 1, false
  while true do
    if in_string then
      local pos = string.find(body, '["\\]', i)
      if pos == nil then return false end
      if string.byte(body, pos) == 92 then -- backslash: skip the escaped byte
        i = pos + 2
      else
        in_string, i = false, pos + 1
      end
    else
      local pos = string.find(body, '[%[%]{}"]', i)
      if pos == nil then return false end
      local c = string.byte(body, pos)
      if c == 34 then -- "
        in_string = true
      elseif c == 91 or c == 123 then -- [ {
        depth = depth + 1
        if depth > MAX_DEPTH then return true end
      else
        depth = depth - 1
      end
      i = pos + 1
    end
  end
end

local function header_bytes(headers)
  local total = 0
  for name, value in pairs(headers) do
    total = total + #name + #value + 32
  end
  return total
end

local function bad_credential(headers)
  for _, name in ipairs(CREDENTIAL_HEADERS) do
    local value = headers:get(name)
    -- Control characters, or bytes that are not ASCII (including invalid UTF-8).
    if value ~= nil and (#value > MAX_CREDENTIAL_BYTES or string.find(value, "[^\32-\126]")) then
      return true
    end
  end
  return false
end

local function reject(request_handle, status, message, type_, code, param)
  local body = error_body(message, type_, code, param)
  local meta = request_handle:streamInfo():dynamicMetadata()
  local seed = meta:get("switchboard")
  if seed ~= nil and seed["surface"] ~= nil then
    body = surface_body(seed["surface"], status, json_string(message), seed["request_id"],
      seed["path"])
  end
  -- Tells local_reply_config that this body is already in OpenAI's shape.
  meta:set("switchboard", "rendered", true)
  -- Envoy frames a local reply to a gRPC request as a gRPC status (HTTP 200);
  -- envoy_on_response puts the HTTP answer back.
  meta:set("switchboard", "refused_status", status)
  meta:set("switchboard", "refused_body", body)
  request_handle:respond({[":status"] = status, ["content-type"] = "application/json"}, body)
end

-- Returns true when the request was answered here.
local function check_headers(request_handle, headers)
  if header_bytes(headers) > MAX_HEADER_BYTES then
    reject(request_handle, "431",
      "Request headers too large (limit " .. MAX_HEADER_BYTES .. " bytes, counted as gRPC "
        .. "metadata: name + value + 32 per header).",
      "invalid_request_error", "request_header_fields_too_large", nil)
    return true
  end
  if bad_credential(headers) then
    -- The same answer as an unknown key: the value is never forwarded (nor logged).
    reject(request_handle, "401", "Invalid API key.", "authentication_error",
      "invalid_api_key", nil)
    return true
  end
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "^application/grpc") then
    -- The edge speaks HTTP/JSON; gRPC callers use the services' own ports.
    reject(request_handle, "415",
      "This endpoint takes JSON (content-type: application/json), not gRPC.",
      "invalid_request_error", "unsupported_media_type", nil)
    return true
  end
  return false
end

-- Returns true when the request was answered here.
local function check_body(request_handle, body)
  local key = forbidden_key(body)
  if key then
    reject(request_handle, "400",
      key .. " cannot be set by clients: upstreams are chosen by the gateway's configuration",
      "invalid_request_error", "forbidden_parameter", key)
    return true
  end
  if too_deep(body) then
    reject(request_handle, "400",
      "The request body nests arrays and objects more than " .. MAX_DEPTH .. " levels deep.",
      "invalid_request_error", "invalid_request", nil)
    return true
  end
  return false
end

local HAS_BODY = {POST = true, PUT = true, PATCH = true}

-- A seed API mounted at another prefix (switchboard_stack/edge_surfaces.py):
-- its route's metadata names the prefix, the prefix in the protos, and the
-- first path segments the APIs at that prefix own. Returns the path to
-- transcode, or nil for a path no API there owns.
local function seed_path(request_handle, path)
  local route = request_handle:metadata()
  local prefix = route:get("prefix")
  if prefix == nil or path:sub(1, #prefix) ~= prefix then
    return path
  end
  local rest = path:sub(#prefix + 1)
  local segment = rest:match("^[^/:?]+") or ""
  if not string.find(route:get("owns"), "," .. segment .. ",", 1, true) then
    return nil
  end
  return route:get("canonical") .. rest
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local original = headers:get(":path") or ""
  local rewritten = seed_path(request_handle, original)
  local surface = surface_of(rewritten or original)
  if rewritten ~= nil and rewritten ~= original then
    headers:replace(":path", rewritten)
  end
  if surface ~= nil then
    local meta = request_handle:streamInfo():dynamicMetadata()
    meta:set("switchboard", "surface", surface)
    meta:set("switchboard", "request_id", headers:get("x-request-id") or "")
    -- Seed 004's error bodies name the path asked for.
    meta:set("switchboard", "path", (original:gsub("%?.*$", "")))
  end
  if rewritten == nil then
    reject(request_handle, "404", "Unknown route " .. (headers:get(":method") or "") .. " "
      .. original .. ".", "invalid_request_error", "unknown_url", nil)
    return
  end
  if check_headers(request_handle, headers) then
    return
  end
  -- Marks the call as coming through the edge (whatever a client sent under
  -- this name is replaced): services refuse it on INTERNAL methods
  -- (switchboard_common/policy.py).
  headers:replace("x-switchboard-edge", "1")
  local method = headers:get(":method")
  local path = headers:get(":path")
  local content_type = headers:get("content-type") or ""
  -- Every body but multipart forms (the vision route's picture) is JSON to the
  -- transcoder whatever its content-type says, so every one is checked.
  if not HAS_BODY[method] or string.find(content_type, "^multipart/") then
    return
  end
  -- Wait for the whole body (Envoy answers 413 past the buffer limit):
  -- json_to_metadata sets the stream flag once it has parsed it.
  -- (Handles taken before body() are invalid after it, so headers are fetched again.)
  local body = request_handle:body()
  if body ~= nil and body:length() > 0 then
    if check_body(request_handle, body:getBytes(0, body:length())) then
      return
    end
  end
  if method ~= "POST" or not STREAMING[path] then
    return
  end
  local meta = request_handle:streamInfo():dynamicMetadata():get("switchboard")
  local stream = meta ~= nil and meta["stream"] or nil
  if stream ~= nil and type(stream) ~= "boolean" then
    -- The transcoder would read "yes" or "1" as true, then answer without streaming.
    reject(request_handle, "400", "stream must be true or false", "invalid_request_error",
      "invalid_request", "stream")
    return
  end
  if stream == true then
    request_handle:headers():replace(":path", path .. ":stream")
  end
end

local HTTP_TYPES = {
  ["400"] = "invalid_request_error", ["401"] = "authentication_error",
  ["403"] = "permission_error", ["404"] = "invalid_request_error",
  ["409"] = "conflict_error", ["429"] = "rate_limit_error",
  ["501"] = "not_implemented_error", ["503"] = "service_unavailable_error",
  ["504"] = "timeout_error",
}

-- Services put the HTTP status and the OpenAI error body in trailing metadata
-- (switchboard_common/errors.py); the transcoder has turned the gRPC error into
-- a JSON google.rpc.Status, which is replaced here.
function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  local refused = response_handle:streamInfo():dynamicMetadata():get("switchboard")
  if refused ~= nil and refused["refused_status"] ~= nil and headers:get("grpc-status") ~= nil then
    headers:replace(":status", refused["refused_status"])
    headers:replace("content-type", "application/json")
    headers:remove("grpc-status")
    headers:remove("grpc-message")
    response_handle:body(true):setBytes(refused["refused_body"])
    return
  end
  local seed = refused ~= nil and refused["surface"] or nil
  local body_json = headers:get("x-switchboard-error")
  local status = headers:get("x-switchboard-http-status")
  local grpc_message = headers:get("grpc-message")
  local grpc_status = headers:get("grpc-status")
  headers:remove("x-switchboard-error")
  headers:remove("x-switchboard-http-status")
  headers:remove("grpc-accept-encoding")
  local code = headers:get(":status")
  if body_json == nil and (grpc_status == nil or grpc_status == "0") then
    headers:remove("grpc-status")
    headers:remove("grpc-message")
    if status ~= nil and code == "200" then
      -- A successful answer that sets its HTTP status: GET /healthz answers
      -- 503, with each component's state as the body, when the suite cannot serve.
      headers:replace(":status", status)
      return
    end
    if (tonumber(code) or 0) < 400 then
      return
    end
    -- An error status no Switchboard interceptor rendered, which the
    -- transcoder turned into a google.rpc.Status JSON body ({"code": ...}).
    -- Envoy's own replies are already in OpenAI's shape ({"error": ...}).
    local body = response_handle:body()
    if body == nil or body:length() == 0 then
      return
    end
    local text = body:getBytes(0, math.min(body:length(), 16))
    if seed ~= nil and string.find(text, '^%s*{%s*"error"') then
      -- Envoy's own reply (bad JSON, unknown route, too large), in the seed API's shape.
      local whole = body:getBytes(0, body:length())
      body:setBytes(surface_body(seed, code, message_literal(whole), refused["request_id"],
        refused["path"]))
      return
    end
    if not string.find(text, '^%s*{%s*"code"') then
      return
    end
    local message
    if code:sub(1, 1) == "5" then
      -- Internal details (exception types, message names) stay in the logs.
      message = "The server could not handle this request."
    else
      message = "Request refused (status " .. code .. ")."
    end
    -- (Handles taken before body() are invalid after it.)
    response_handle:headers():replace("content-type", "application/json")
    if seed ~= nil then
      body:setBytes(surface_body(seed, code, json_string(message), refused["request_id"],
        refused["path"]))
      return
    end
    body:setBytes(error_body(message, HTTP_TYPES[code] or "api_error", nil, nil))
    return
  end
  if body_json == nil then
    -- An error no Switchboard interceptor rendered (e.g. an unknown method).
    local message = grpc_message or ("upstream error " .. code)
    if seed ~= nil then
      body_json = surface_body(seed, code, json_string(message), refused["request_id"],
        refused["path"])
    else
      body_json = error_body(message, HTTP_TYPES[code] or "api_error", nil, nil)
    end
  else
    headers:replace(":status", status)
    if seed == "inference_manager" then
      -- The services render seed 004's errors with an empty path: the edge knows it.
      local path = '"path":' .. json_string(refused["path"] or "")
      body_json = body_json:gsub('"path":""', function() return path end, 1)
    end
  end
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-status-details-bin")
  headers:replace("content-type", "application/json")
  local body = response_handle:body()
  if body ~= nil then
    body:setBytes(body_json)
  end
end
