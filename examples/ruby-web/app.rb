# A web app on Ruby's standard library (socket): one request per connection.
require "socket"

def version
  return ENV["VERSION"] if ENV["VERSION"] && !ENV["VERSION"].empty?
  File.read("VERSION").strip
rescue Errno::ENOENT
  "unknown"
end

server = TCPServer.new(ENV.fetch("BIND_ADDRESS", "127.0.0.1"), Integer(ENV.fetch("PORT", "5000")))
$stderr.puts "listening on #{ENV['BIND_ADDRESS']}:#{ENV['PORT']}"
loop do
  client = server.accept
  request_line = client.gets.to_s
  while (line = client.gets) && line != "\r\n"; end
  path = request_line.split[1] || "/"
  body = path == "/" ? "hello from #{ENV['APP']} ruby #{version}\n" : "not found\n"
  status = path == "/" ? "200 OK" : "404 Not Found"
  client.write "HTTP/1.1 #{status}\r\nContent-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}"
  client.close
end
