"""The ssh builder: run commands on a remote host and upload files, with the credentials creds-init wrote."""
