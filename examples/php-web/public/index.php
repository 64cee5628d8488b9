<?php
// Served by php-fpm behind the instance's nginx (piku's `php:` kind). Unknown paths come here
// too, as with uWSGI's php plugin.
$version = trim(@file_get_contents(__DIR__ . '/../VERSION') ?: 'unknown');
header('Content-Type: text/plain');
echo 'hello from ', getenv('APP'), ' php ', $version, ' (', PHP_VERSION, ")\n";
