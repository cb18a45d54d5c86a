"""The embedded local stack: real services on loopback that stand in for AWS, SFTP and Drive."""
