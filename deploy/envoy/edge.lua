-- The edge's glue between OpenAI's HTTP conventions and Switchboard's gRPC API.

-- OpenAI serves unary and streaming answers on one path and switches on the
-- body's "stream" field; the transcoder maps one path to one RPC. Streaming
-- bodies go to the ":stream" route, whose RPC returns exact SSE bytes.
local STREAMING = {["/v1/chat/completions"] = true, ["/v1/completions"] = true}

-- Keys that would let a client choose where, or with what credentials, an
-- upstream call goes (the LiteLLM CVE-2024-6587 class). The transcoder would
-- drop them silently; refusing says so. Only a JSON object key can match: in
-- string values every quote is escaped.
local FORBIDDEN = {"base_url", "api_base", "api_key", "extra_headers", "extra_query"}

local function forbidden_key(body)
  for _, key in ipairs(FORBIDDEN) do
    if string.find(body, '"' .. key .. '"%s*:') then
      return key
    end
  end
  return nil
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local path = headers:get(":path")
  local content_type = headers:get("content-type") or ""
  if headers:get(":method") ~= "POST" or not string.find(content_type, "json", 1, true) then
    return
  end
  -- Wait for the whole body: json_to_metadata sets the flag once it has parsed it.
  -- (Handles taken before body() are invalid after it, so headers are fetched again.)
  local body = request_handle:body()
  local key = body and forbidden_key(body:getBytes(0, body:length()))
  if key then
    request_handle:respond(
      {[":status"] = "400", ["content-type"] = "application/json"},
      '{"error":{"message":"' .. key .. ' cannot be set by clients: upstreams are chosen '
        .. 'by the gateway\'s configuration","type":"invalid_request_error",'
        .. '"code":"forbidden_parameter","param":"' .. key .. '"}}')
    return
  end
  if not STREAMING[path] then
    return
  end
  local meta = request_handle:streamInfo():dynamicMetadata():get("switchboard")
  if meta ~= nil and meta["stream"] == true then
    request_handle:headers():replace(":path", path .. ":stream")
  end
end

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
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
  local body_json = headers:get("x-switchboard-error")
  local status = headers:get("x-switchboard-http-status")
  local grpc_message = headers:get("grpc-message")
  local grpc_status = headers:get("grpc-status")
  headers:remove("x-switchboard-error")
  headers:remove("x-switchboard-http-status")
  headers:remove("grpc-accept-encoding")
  if body_json == nil and (grpc_status == nil or grpc_status == "0") then
    headers:remove("grpc-status")
    headers:remove("grpc-message")
    return
  end
  if body_json == nil then
    -- An error no Switchboard interceptor rendered (e.g. an unknown method).
    local code = headers:get(":status")
    local message = grpc_message or ("upstream error " .. code)
    body_json = '{"error":{"message":' .. json_string(message) .. ',"type":"'
      .. (HTTP_TYPES[code] or "api_error") .. '","code":null,"param":null}}'
  else
    headers:replace(":status", status)
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
