# A gaspar2 worker in Ruby: it echoes each request, and fails those that start with "fail".
# Serve: gaspar2 serve --exec 'ruby echo-worker.rb'
$stdin.binmode
$stdout.binmode

def answer(kind, body) # kind 0: a reply, 1: this request failed
  $stdout.write([kind, body.bytesize].pack("CN"), body)
  $stdout.flush
end

while (head = $stdin.read(4)) && head.bytesize == 4 # end of file: gaspar2 is done with us
  length = head.unpack1("N")
  request = $stdin.read(length)
  break if request.nil? || request.bytesize != length
  if request.start_with?("fail")
    answer(1, "this example fails requests that start with 'fail'")
  else
    answer(0, request)
  end
end
