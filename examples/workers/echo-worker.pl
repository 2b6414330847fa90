# A gaspar2 worker in Perl: it echoes each request, and fails those that start with "fail".
# Serve: gaspar2 serve --exec 'perl echo-worker.pl'
use strict;
use warnings;

binmode STDIN;
binmode STDOUT;
$| = 1;

sub read_exactly {
    my ($length) = @_;
    my $data = '';
    while (length($data) < $length) {
        my $got = read(STDIN, $data, $length - length($data), length($data));
        return undef unless $got;
    }
    return $data;
}

sub answer {    # kind 0: a reply, 1: this request failed
    my ($kind, $body) = @_;
    print STDOUT pack('CN', $kind, length $body), $body;
}

while (defined(my $head = read_exactly(4))) {    # end of file: gaspar2 is done with us
    my $request = read_exactly(unpack('N', $head));
    last unless defined $request;
    if (substr($request, 0, 4) eq 'fail') {
        answer(1, "this example fails requests that start with 'fail'");
    } else {
        answer(0, $request);
    }
}
