use strict;
use warnings;

use Test::More tests => 2;

use_ok('Net::Gaspar2', 'request');
like($Net::Gaspar2::VERSION, qr/^\d+\.\d+\.\d+\z/, 'version');
