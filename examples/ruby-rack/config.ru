# A Rack app for piku's `rwsgi:` kind, served by puma (the server's, as the Gemfile does not
# bundle one). Plain Rack: a callable answering [status, headers, body].
VERSION_FILE = File.join(__dir__, "VERSION")

run lambda { |env|
  version = File.exist?(VERSION_FILE) ? File.read(VERSION_FILE).strip : "unknown"
  body = "hello from #{ENV['APP']} rack #{version} (#{env['SERVER_SOFTWARE']})\n"
  [200, { "content-type" => "text/plain" }, [body]]
}
